"""``python -m diffplan ...`` is the ``diffplan`` command; torchrun starts it this way
(``torchrun --nproc-per-node 2 -m diffplan train ...``)."""

import sys

from diffplan.cli import main

sys.exit(main())
