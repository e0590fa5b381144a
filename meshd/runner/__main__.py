"""python -m meshd.runner --fd N: the child process the daemon starts for one model."""

from meshd.runner.serve import main

main()
