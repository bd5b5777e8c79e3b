"""python -m sparse_attn_fairseq.analyze: the sparse-attn-analyze command."""

import sys

from sparse_attn_fairseq.analyze.cli import main

sys.exit(main())
