"""Names of the files `virtpool up` keeps in its data dir that other processes read."""

TOKEN_FILE = "admin.token"  # the bootstrap admin token, 0600
URL_FILE = "api.url"  # where the running API listens, 0600; gone when it stops
JOIN_URL_FILE = "join.url"  # where agents join (HTTPS, the pool CA), 0600
# The CA that checks the API's certificate when it serves HTTPS with one of the pool CA (a copy
# of the pool CA's certificate); absent when the API serves plain HTTP on loopback or an
# operator's own certificate.
API_CA_FILE = "api-ca.crt"
