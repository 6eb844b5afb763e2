"""The admin surface: queries, exports and stats (``queries``), the HTTP admin service and
review page (``app``), tokens, the access audit, cost and the retention purge. Importing
the package loads none of them, so a worker or a query command never loads the web stack."""
