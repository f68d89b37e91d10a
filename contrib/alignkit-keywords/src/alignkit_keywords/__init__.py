"""alignkit-keywords: a rule-based reward as an alignkit scorer (``scorer=keywords``).

Hooks in :mod:`alignkit_keywords.plugin`, the reward in :mod:`alignkit_keywords.reward`, config in
``conf/scorer/keywords.yaml``.
"""

from __future__ import annotations

__version__ = "0.1.0"
