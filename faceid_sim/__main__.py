"""``python -m faceid_sim``: see faceid_sim.cli."""

import sys

from faceid_sim.cli import main

sys.exit(main())
