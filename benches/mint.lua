-- wrk script: POST a JSON TokenRequest with the API client's bearer token.
-- ISSUER_TOKEN holds the token; the URL names the cluster, namespace and account.
wrk.method = "POST"
wrk.body = '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest",'
  .. '"spec":{"audiences":["sts.amazonaws.com"],"expirationSeconds":3600}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ISSUER_TOKEN")
