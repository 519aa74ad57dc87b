import sys

from broker_proxy.cli import main

sys.exit(main())
