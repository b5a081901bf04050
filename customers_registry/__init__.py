"""The installed face of the customers registry: its two commands and its pytest plugin.

The service itself (app.py, models.py, ... at the top of the repository) is installed
beside this package, in `customers_registry/_service/`, and is never put on the import
path of a process that did not ask for it: only the commands' own processes import it,
under its own module names, from that folder. A test process that loads the plugin
imports nothing but this package, the standard library and pytest.
"""
