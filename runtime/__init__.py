"""The generation loop, plans and policies, sampling, and the ``varrt`` command line."""
