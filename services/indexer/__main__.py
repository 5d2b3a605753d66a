import sys

from services.indexer.job import main

sys.exit(main())
