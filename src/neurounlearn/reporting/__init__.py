"""neurounlearn.reporting: standalone HTML reports comparing runs and reference arms.

:func:`~neurounlearn.reporting.report.render_report` lays out any list of
:class:`~neurounlearn.reporting.report.ReportArm`; :func:`~neurounlearn.reporting.runs.render_runs`
builds the arms from finished run directories.
"""
