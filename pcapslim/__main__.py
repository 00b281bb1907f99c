from pcapslim.cli import main

main()
