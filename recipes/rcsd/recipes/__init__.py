"""The top layer: the `rcsd` command and the recipes that drive several parts at once.

Services and trainer never import each other; what starts services, trains and evaluates lives here
(`cli`, `launch`, `evaluate`, `demo`, `compare`).
"""
