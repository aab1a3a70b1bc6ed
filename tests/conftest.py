import os

from hypothesis import HealthCheck, settings

# CI runs a bounded number of examples per property; `HYPOTHESIS_PROFILE=thorough` for more.
settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
