"""Tally's PromQL subset: pure parsing and evaluation (no storage, network or HTTP code).

- :mod:`tally.promql.lexer`, :mod:`tally.promql.parser` → AST (:mod:`tally.promql.ast`);
  unsupported syntax raises ``PromQLUnsupported`` naming it (HTTP 400 ``bad_data``).
- :mod:`tally.promql.views`: what one stored bucket is as a sample, per metric type.
- :mod:`tally.promql.evaluator`: vectorised evaluation over fetched buckets, incl.
  ``sketch_quantile(φ, x[w]) by (...)`` over merged DDSketches.
- :mod:`tally.promql.sketches`: fast bulk merge of encoded sketches for that function.

Supported: selectors with ``= != =~ !~`` and ``offset``; ``[range]``; ``sum avg min max
count`` with ``by``/``without``; ``sketch_quantile``; ``rate increase sum_over_time
avg_over_time min_over_time max_over_time count_over_time abs time vector scalar``;
``+ - * / % ^``, comparisons (``bool``), ``and or unless``, ``on``/``ignoring``; numbers,
parentheses.  Not supported (400): subqueries, ``@``, ``group_left/right``, strings, other
functions and aggregations.
"""
