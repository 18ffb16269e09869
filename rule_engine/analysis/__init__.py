"""Know before you roll: replay recorded events, check types against them, lint bundles, preview stages.

An edge package (like the CLI): it reads files and may use the data plane and the public API, and
the data plane never imports it. Nothing here runs on the request path.
"""
