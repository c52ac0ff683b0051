from nemodeploy.cli import main

main()
