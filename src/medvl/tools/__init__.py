"""Tools built on medvl's core: the quickstart recipe, synthetic phantom data, benchmarks and the demo.

The core (``medvl.models``, ``medvl.data``, ``medvl.imaging``, ``medvl.train``, ``medvl.eval``,
``medvl.inference``, ``medvl.serve``, ...) is the importable library; a tool uses it as any user
would, through its public functions. The dependency runs one way: a tool may import the core, the
core never imports ``medvl.tools`` (not even lazily), so the library stays whole without them. The
CLI (``medvl.commands``) is the layer that exposes both.
"""
