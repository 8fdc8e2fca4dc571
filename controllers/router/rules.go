package router

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The resources of KubeEdge's router API.
var (
	Rules         = schema.GroupVersionResource{Group: "rules.kubeedge.io", Version: "v1", Resource: "rules"}
	RuleEndpoints = schema.GroupVersionResource{Group: "rules.kubeedge.io", Version: "v1", Resource: "ruleendpoints"}
)

// Endpoint types (RuleEndpoint spec.ruleEndpointType).
const (
	TypeRest       = "rest"
	TypeEventBus   = "eventbus"
	TypeServiceBus = "servicebus"
)

// ruleKey names a Rule: namespace/name.
type ruleKey struct{ namespace, name string }

func (k ruleKey) String() string { return k.namespace + "/" + k.name }

// endpoint is a RuleEndpoint's spec.
type endpoint struct {
	typ        string
	properties map[string]string
}

// rule is a Rule resolved against its endpoints: what the router needs to
// route one message.
type rule struct {
	key            ruleKey
	sourceType     string
	targetType     string
	sourceResource map[string]string
	targetResource map[string]string
	// servicePort is the servicebus target's service_port.
	servicePort uint32
	// restPath is the rest source's path, split into segments ({x}
	// matches any one segment).
	restPath []string
	// topic is the eventbus source's MQTT topic at the edge
	// (<namespace>/<topic>) and node its node.
	topic, node string
	// problem says why the rule cannot route (an endpoint missing, a
	// resource attribute missing); empty when it can.
	problem string
}

func stringMap(u *unstructured.Unstructured, fields ...string) map[string]string {
	m, _, _ := unstructured.NestedStringMap(u.Object, fields...)
	if m == nil {
		m = map[string]string{}
	}
	return m
}

func parseEndpoint(u *unstructured.Unstructured) endpoint {
	typ, _, _ := unstructured.NestedString(u.Object, "spec", "ruleEndpointType")
	return endpoint{typ: typ, properties: stringMap(u, "spec", "properties")}
}

// splitPath splits a path into its non-empty segments.
func splitPath(p string) []string {
	var segs []string
	for s := range strings.SplitSeq(p, "/") {
		if s != "" {
			segs = append(segs, s)
		}
	}
	return segs
}

// resolve builds the rule of u given the endpoints of its namespace.
func resolve(u *unstructured.Unstructured, endpoints map[string]endpoint) *rule {
	r := &rule{
		key:            ruleKey{u.GetNamespace(), u.GetName()},
		sourceResource: stringMap(u, "spec", "sourceResource"),
		targetResource: stringMap(u, "spec", "targetResource"),
	}
	srcName, _, _ := unstructured.NestedString(u.Object, "spec", "source")
	dstName, _, _ := unstructured.NestedString(u.Object, "spec", "target")
	src, srcOK := endpoints[srcName]
	dst, dstOK := endpoints[dstName]
	switch {
	case !srcOK:
		r.problem = fmt.Sprintf("source RuleEndpoint %s/%s does not exist", r.key.namespace, srcName)
		return r
	case !dstOK:
		r.problem = fmt.Sprintf("target RuleEndpoint %s/%s does not exist", r.key.namespace, dstName)
		return r
	}
	r.sourceType, r.targetType = src.typ, dst.typ
	need := func(m map[string]string, attr, what string) string {
		if m[attr] == "" && r.problem == "" {
			r.problem = fmt.Sprintf("%s has no %q", what, attr)
		}
		return m[attr]
	}
	switch src.typ {
	case TypeRest:
		r.restPath = splitPath(need(r.sourceResource, "path", "sourceResource"))
	case TypeEventBus:
		r.topic = r.key.namespace + "/" + strings.TrimPrefix(need(r.sourceResource, "topic", "sourceResource"), "/")
		r.node = need(r.sourceResource, "node_name", "sourceResource")
	default:
		r.problem = fmt.Sprintf("source RuleEndpoint %s is of type %q; edgesync routes from rest and eventbus", srcName, src.typ)
	}
	switch dst.typ {
	case TypeRest:
		need(r.targetResource, "resource", "targetResource")
	case TypeEventBus:
		need(r.targetResource, "topic", "targetResource")
	case TypeServiceBus:
		need(r.targetResource, "path", "targetResource")
		port, err := strconv.ParseUint(dst.properties["service_port"], 10, 16)
		if (err != nil || port == 0) && r.problem == "" {
			r.problem = fmt.Sprintf("servicebus RuleEndpoint %s needs properties.service_port, a port number (has %q)", dstName, dst.properties["service_port"])
		}
		r.servicePort = uint32(port)
	default:
		r.problem = fmt.Sprintf("target RuleEndpoint %s is of type %q", dstName, dst.typ)
	}
	if r.problem == "" {
		switch {
		case src.typ == TypeRest && (dst.typ == TypeEventBus || dst.typ == TypeServiceBus):
		case src.typ == TypeEventBus && dst.typ == TypeRest:
		default:
			r.problem = fmt.Sprintf("edgesync routes rest to eventbus or servicebus, and eventbus to rest; not %s to %s", src.typ, dst.typ)
		}
	}
	return r
}

// index is an immutable view of every rule, built when a Rule or
// RuleEndpoint changes and swapped in whole.
type index struct {
	rules map[ruleKey]*rule
	// rest holds the rest-source rules of each namespace, most specific
	// (longest) path first.
	rest map[string][]*rule
	// topics holds the eventbus-source rules of each node by edge topic.
	topics map[string]map[string][]*rule
}

func buildIndex(rules []*rule) *index {
	ix := &index{rules: map[ruleKey]*rule{}, rest: map[string][]*rule{}, topics: map[string]map[string][]*rule{}}
	for _, r := range rules {
		ix.rules[r.key] = r
		if r.problem != "" {
			continue
		}
		switch r.sourceType {
		case TypeRest:
			ix.rest[r.key.namespace] = append(ix.rest[r.key.namespace], r)
		case TypeEventBus:
			if ix.topics[r.node] == nil {
				ix.topics[r.node] = map[string][]*rule{}
			}
			ix.topics[r.node][r.topic] = append(ix.topics[r.node][r.topic], r)
		}
	}
	for _, rs := range ix.rest {
		sort.SliceStable(rs, func(i, j int) bool {
			if len(rs[i].restPath) != len(rs[j].restPath) {
				return len(rs[i].restPath) > len(rs[j].restPath)
			}
			return rs[i].key.name < rs[j].key.name
		})
	}
	return ix
}

// matchRest finds the rest-source rule of namespace whose path is the
// longest prefix of segs, and returns it with the segments that follow.
func (ix *index) matchRest(namespace string, segs []string) (*rule, []string) {
	for _, r := range ix.rest[namespace] {
		if len(r.restPath) > len(segs) {
			continue
		}
		ok := true
		for i, p := range r.restPath {
			if !(strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}")) && p != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			return r, segs[len(r.restPath):]
		}
	}
	return nil, nil
}

// topicsOf returns the sorted edge topics node subscribes to.
func (ix *index) topicsOf(node string) []string {
	topics := make([]string, 0, len(ix.topics[node]))
	for t := range ix.topics[node] {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	return topics
}

// joinTopic appends the segments after a rest rule's path to a target
// topic or path, as KubeEdge does.
func joinTopic(base string, rest []string) string {
	if len(rest) == 0 {
		return base
	}
	return strings.TrimSuffix(base, "/") + "/" + strings.Join(rest, "/")
}
