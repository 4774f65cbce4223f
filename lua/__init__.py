"""The Lua scripts of the store, one per operation (and lib.lua, prepended to each),
shipped as the package data of ``concord.lua`` and read with
``importlib.resources.files("concord.lua")`` (concord.server.store.scripts). This
file makes the folder a package, so a checkout, an editable install and a wheel
all find them by that one name."""
