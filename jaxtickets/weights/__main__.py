"""python -m jaxtickets.weights fetch NAME: see jaxtickets/weights/fetch.py."""

import sys

from jaxtickets.weights import fetch

sys.exit(fetch.main(sys.argv[1:]))
