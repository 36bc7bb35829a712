from flowtarget.cli import main

main()
