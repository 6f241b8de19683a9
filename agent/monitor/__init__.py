"""Live monitoring of the model at this site (issue #16).

* :mod:`agent.monitor.card`: the model card's operating thresholds and reference
  distributions, read without loading the model (the node role never loads torch);
* :mod:`agent.monitor.performance`: live AUC, rates at the operating threshold and
  calibration against matched echo outcomes, per task and calendar window; referral yield;
* :mod:`agent.monitor.drift`: live score and input distributions against the card's, the
  periodic check that stores ``monitor_checks`` rows and raises alerts;
* :mod:`agent.monitor.report`: the self-contained HTML report of ``monitor report``.
"""
