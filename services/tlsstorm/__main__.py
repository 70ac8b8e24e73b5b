from tlsstorm.cli import main

main()
