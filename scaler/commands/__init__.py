"""The commands: `serve`, `check`, `replay`, `demo`, each built from its flags and run by main.py.

main.py and parser.py are the one place that knows every command; check.py,
replay/ and demo/ do not know each other (lint-imports checks it), and `serve`
is the running service itself (scaler.service.server). A new command gets a
module or package here, its settings declared once (scaler.options), and a line in main.py.
"""
