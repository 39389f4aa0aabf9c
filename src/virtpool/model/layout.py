"""Names of the files `virtpool up` keeps in its data dir that other processes read."""

TOKEN_FILE = "admin.token"  # the bootstrap admin token, 0600
URL_FILE = "api.url"  # where the running API listens, 0600; gone when it stops
JOIN_URL_FILE = "join.url"  # where agents join (HTTPS, the pool CA), 0600
