import sys

from gaincell.cli import main

sys.exit(main())
