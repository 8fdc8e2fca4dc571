package bootstrap

// Cached reports whether the service's caches hold what a test just
// wrote: the token (and, when check is set, a Token it accepts) and the
// Nodes named. Tests wait on it instead of racing the informers.
func (s *Service) Cached(tokenID string, check func(*Token) bool, nodes ...string) bool {
	if tokenID != "" {
		obj, err := s.caches.tokens.Secrets("kube-system").Get("bootstrap-token-" + tokenID)
		if err != nil {
			return false
		}
		if check != nil && !check(tokenFromSecret(obj)) {
			return false
		}
	}
	for _, n := range nodes {
		if _, err := s.caches.nodes.Get(n); err != nil {
			return false
		}
	}
	return true
}
