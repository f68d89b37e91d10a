"""alignkit-simpo: SimPO as an alignkit plugin (``alignkit train method=simpo``).

The hook implementations are in :mod:`alignkit_simpo.plugin`, the math in :mod:`alignkit_simpo.losses`,
the training objective in :mod:`alignkit_simpo.objective` and the Hydra config in ``conf/``.
"""

from __future__ import annotations

__version__ = "0.1.0"
