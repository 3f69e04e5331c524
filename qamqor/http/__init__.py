"""HTTP plumbing shared by every part's routes: the signed-in user and role guards
(``deps``), CSRF, strict path and query parameters, the request guard, page templates and
their guards, the navigation read from the routes, and domain errors as HTTP answers.

It sits below the parts and above ``core``: it imports no part, and ``qamqor.web`` (the
app) only assembles what the parts built on it.
"""
