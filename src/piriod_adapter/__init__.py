"""Piriod usage webhook adapter: signed meter deliveries in, Piriod usages out, failures queued."""
