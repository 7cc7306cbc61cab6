"""The precision harness: metrics, the three rules, the baseline ledger, the op registry
and the report command (``python -m tops.precision report``)."""
