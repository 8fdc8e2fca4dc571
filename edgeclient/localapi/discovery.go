package localapi

import (
	"encoding/json"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
)

// serveDiscovery answers the paths that are not resources: /api, /apis,
// each group and group version, /version and the health checks. It
// reports whether path was one of them.
func (s *Server) serveDiscovery(w http.ResponseWriter, r *http.Request, path string) bool {
	if r.Method != http.MethodGet {
		return false
	}
	switch path {
	case "/healthz", "/livez", "/readyz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write([]byte("ok"))
		return true
	case "/version":
		// The apiserver writes it as plain JSON: it is not an API object.
		b, _ := json.MarshalIndent(serverVersion(), "", "  ")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(b)
		return true
	case "/api":
		s.respond(w, r, &metav1.APIVersions{
			Versions:                   []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host}},
		})
		return true
	case "/apis":
		list := &metav1.APIGroupList{}
		for _, g := range s.groups() {
			list.Groups = append(list.Groups, *g)
		}
		s.respond(w, r, list)
		return true
	case "/api/v1":
		s.respond(w, r, s.resourceList(schema.GroupVersion{Version: "v1"}))
		return true
	}
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if parts[0] != "apis" || len(parts) < 2 || len(parts) > 3 {
		return false
	}
	for _, g := range s.groups() {
		if g.Name != parts[1] {
			continue
		}
		if len(parts) == 2 {
			s.respond(w, r, g)
			return true
		}
		for _, v := range g.Versions {
			if v.Version == parts[2] {
				s.respond(w, r, s.resourceList(schema.GroupVersion{Group: g.Name, Version: v.Version}))
				return true
			}
		}
	}
	return false
}

// respond writes a discovery object.
func (s *Server) respond(w http.ResponseWriter, r *http.Request, obj runtime.Object) {
	info, ok := negotiate(r, false)
	if !ok {
		writeError(w, r, notAcceptable())
		return
	}
	writeObject(w, info, unversioned, http.StatusOK, obj)
}

// groups are the API groups served, besides the core group.
func (s *Server) groups() []*metav1.APIGroup {
	byName := map[string]*metav1.APIGroup{}
	for _, r := range s.resources {
		gv := r.GroupVersion
		if gv.Group == "" {
			continue
		}
		g := byName[gv.Group]
		if g == nil {
			g = &metav1.APIGroup{Name: gv.Group}
			byName[gv.Group] = g
		}
		v := metav1.GroupVersionForDiscovery{GroupVersion: gv.String(), Version: gv.Version}
		if !slices.Contains(g.Versions, v) {
			g.Versions = append(g.Versions, v)
			g.PreferredVersion = g.Versions[0]
		}
	}
	out := make([]*metav1.APIGroup, 0, len(byName))
	for _, g := range byName {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *metav1.APIGroup) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// resourceList is the discovery document of one group version.
func (s *Server) resourceList(gv schema.GroupVersion) *metav1.APIResourceList {
	list := &metav1.APIResourceList{GroupVersion: gv.String()}
	for _, r := range s.resources {
		if r.GroupVersion != gv {
			continue
		}
		list.APIResources = append(list.APIResources, metav1.APIResource{
			Name: r.Plural, SingularName: strings.ToLower(r.Kind), Namespaced: r.Namespaced, Kind: r.Kind, Verbs: r.verbs(),
		})
		subs := map[string][]string{}
		for key := range r.Writes {
			if verb, sub, ok := strings.Cut(key, "/"); ok {
				subs[sub] = append(subs[sub], verb)
			}
		}
		for sub, verbs := range subs {
			slices.Sort(verbs)
			kind := r.Kind
			if sub == "token" {
				kind = "TokenRequest"
			}
			list.APIResources = append(list.APIResources, metav1.APIResource{
				Name: r.Plural + "/" + sub, Namespaced: r.Namespaced, Kind: kind, Verbs: verbs,
			})
		}
	}
	slices.SortFunc(list.APIResources, func(a, b metav1.APIResource) int { return strings.Compare(a.Name, b.Name) })
	return list
}

// serverVersion says which Kubernetes API the local API speaks: that of
// the k8s.io/api it was built with.
func serverVersion() *version.Info {
	v := &version.Info{Major: "1", GitVersion: "v1.0.0-edgesync", Platform: "edgesync-localapi"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v.GoVersion = bi.GoVersion
		for _, d := range bi.Deps {
			if d.Path == "k8s.io/api" {
				// k8s.io/api v0.35.4 is Kubernetes v1.35.4.
				rest := strings.TrimPrefix(d.Version, "v0.")
				if minor, patch, ok := strings.Cut(rest, "."); ok {
					v.Minor = minor
					v.GitVersion = "v1." + minor + "." + patch
				}
			}
		}
	}
	return v
}
