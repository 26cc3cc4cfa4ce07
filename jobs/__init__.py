"""The job modules this project's workers serve: one module per job type.

A module named ``X`` here is job type ``X``; it defines ``run(params)``.
"""
