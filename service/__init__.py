"""rapki's fronts: the operator CLI, the enrollment API and the Roles Anywhere emulator.

Each is thin over the ``pki`` library; nothing here holds CA logic.
"""
