"""Measuring models and artifacts: profile, bench, eval, quantization comparisons, the results store,
the HTML report and the support table. Host side; nothing here is imported by the device runtimes.
"""
