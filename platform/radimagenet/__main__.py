"""``python -m radimagenet`` is the same as the ``radimagenet`` command."""

import sys

from radimagenet.cli import main

sys.exit(main())
