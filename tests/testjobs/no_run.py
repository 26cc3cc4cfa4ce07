"""A job module without run()."""

RUN = "not a function"
