"""Measurement without a framework: detection metrics (TPR at a TNR, ROC, scores files) and the
figures of the paper and the report."""
