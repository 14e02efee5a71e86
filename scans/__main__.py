from scans.cli import main

main()
