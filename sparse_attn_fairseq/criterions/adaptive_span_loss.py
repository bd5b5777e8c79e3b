"""``--criterion adaptive_span_loss``: the name fairseq's examples/adaptive_span commands use.

Here it is plain cross-entropy: the span penalty of our models reaches the spans as a gradient during backward
(layers/adaptive_span.py), whatever the criterion, and their spans are logged by the attention modules.
"""

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig


@register_criterion("adaptive_span_loss", dataclass=CrossEntropyCriterionConfig)
class AdaptiveSpanCriterion(CrossEntropyCriterion):
    """Cross-entropy under the name of fairseq's adaptive-span example (see the module docstring)."""
