"""The key server (GCKS): group key lifecycle and the state that must survive a restart.

store    KeyStore: SQLite holding signing keys, KEKs, TEKs, push sequence numbers,
         every SPI ever issued and the member registry
"""
