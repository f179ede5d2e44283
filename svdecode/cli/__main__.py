"""``python -m svdecode.cli ...`` (the README's and torchrun's spelling of the ``svdecode`` command)."""

import sys

from svdecode.cli.parser import main

sys.exit(main())
