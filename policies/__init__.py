"""The example policies, shipped inside the package as `broker_proxy.examples`.

This directory is their source in a checkout (each one checked by the tests); an install from a
wheel (pip, pipx, uv) has them as package data, so `broker-proxy policy init --example NAME`
can write one into a home without a checkout.
"""
