import sys

from postprocessing.cli.main import main

sys.exit(main(sys.argv[1:]))
