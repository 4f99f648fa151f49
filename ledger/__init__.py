"""The ledger: one durable record per issued number, the thing that vouches for a number.

Workers send their numbers' records to one writer process (``writer.py``) over a Unix socket
(``protocol.py``, ``client.py``) and answer only once the writer says they are committed. The
writer commits whatever arrived while its last commit ran in one transaction (group commit),
into its own SQLite file (``sqlite.py``), so that a long ledger transaction never holds up
the counter's reservations in the store's file. Workers read records from the same file.
With a PostgreSQL store the file is also the spool of one ledger shared by every host: the
writer forwards its records there (``forwarder.py``, ``spool.py``, ``postgres.py``).
"""
