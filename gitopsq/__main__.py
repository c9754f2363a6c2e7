from gitopsq.cli import main

main()
