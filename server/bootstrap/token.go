package bootstrap

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	bootstrapsecrets "k8s.io/cluster-bootstrap/util/secrets"
)

// The keys edgesync adds to a bootstrap token Secret. Secret data keys
// cannot hold a slash, hence no domain prefix.
const (
	// NodeNameKey binds the token to one node name.
	NodeNameKey = "edgesync-node-name"
	// SingleUseKey "true" lets the token join one node only.
	SingleUseKey = "edgesync-single-use"
	// UsedByKey and UsedAtKey record which node consumed a single-use
	// token, and when (RFC 3339), in tokens consumed by servers before
	// use records (UseRecordName) replaced them; they are still honoured.
	UsedByKey = "edgesync-used-by"
	UsedAtKey = "edgesync-used-at"
	// NodeGenerationKey records, in a token bound to a node, the node's
	// revocation generation when the token was made: a revocation raises
	// it, and the token no longer joins. Tokens without it (made by
	// kubeadm, or before it existed) are compared by creation time.
	NodeGenerationKey = "edgesync-node-generation"
)

// Group is the bootstrap group (auth-extra-groups) that marks a token as
// an edgesync join token, so that tokens made for kubelets do not join edge
// nodes: `kubeadm token create --groups system:bootstrappers:edgesync`
// makes one too.
const Group = "system:bootstrappers:edgesync"

// Token is a bootstrap token as edgesync reads it from its Secret. The
// secret half is never kept here.
type Token struct {
	// ID is the public half, "[a-z0-9]{6}".
	ID string
	// Expires is the expiration; zero when the token does not expire.
	Expires time.Time
	// Node is the node name the token is bound to, if any.
	Node string
	// NodeGeneration is Node's revocation generation when the token was
	// made; -1 when the token does not record it.
	NodeGeneration int64
	SingleUse      bool
	// UsedBy and UsedAt are set once a single-use token was consumed.
	UsedBy string
	UsedAt string
	// Usages lists the token's usages (authentication, signing).
	Usages []string
	// Groups lists auth-extra-groups.
	Groups      []string
	Description string
}

// Joins reports whether the token is an edgesync join token: usable for
// authentication and in Group.
func (t *Token) Joins() bool {
	return slices.Contains(t.Usages, "authentication") && slices.Contains(t.Groups, Group)
}

// TokenOptions shape a new token.
type TokenOptions struct {
	// TTL is how long the token is valid; zero means forever.
	TTL time.Duration
	// Node binds the token to one node name.
	Node string
	// NodeGeneration is Node's current revocation generation (zero when it
	// was never revoked), recorded in the token.
	NodeGeneration int64
	SingleUse      bool
	// Description is shown by `token list` (and kubeadm).
	Description string
}

// CreateToken creates a new edgesync join token in kube-system and returns
// the full token ("<id>.<secret>") and its record.
func CreateToken(ctx context.Context, client kubernetes.Interface, opts TokenOptions) (string, *Token, error) {
	full, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return "", nil, fmt.Errorf("generate token: %w", err)
	}
	id, secret, _ := strings.Cut(full, ".")
	data := map[string][]byte{
		bootstrapapi.BootstrapTokenIDKey:               []byte(id),
		bootstrapapi.BootstrapTokenSecretKey:           []byte(secret),
		bootstrapapi.BootstrapTokenUsageAuthentication: []byte("true"),
		bootstrapapi.BootstrapTokenExtraGroupsKey:      []byte(Group),
	}
	desc := opts.Description
	if desc == "" {
		desc = "edgesync join token"
		if opts.Node != "" {
			desc += " for node " + opts.Node
		}
	}
	data[bootstrapapi.BootstrapTokenDescriptionKey] = []byte(desc)
	if opts.TTL > 0 {
		data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(time.Now().Add(opts.TTL).UTC().Format(time.RFC3339))
	}
	if opts.Node != "" {
		data[NodeNameKey] = []byte(opts.Node)
		data[NodeGenerationKey] = []byte(strconv.FormatInt(opts.NodeGeneration, 10))
	}
	if opts.SingleUse {
		data[SingleUseKey] = []byte("true")
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      bootstraputil.BootstrapTokenSecretName(id),
			Namespace: metav1.NamespaceSystem,
			Labels:    map[string]string{"app.kubernetes.io/managed-by": "edgesync"},
		},
		Type: bootstrapapi.SecretTypeBootstrapToken,
		Data: data,
	}
	created, err := client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{FieldManager: "edgesync"})
	if err != nil {
		return "", nil, fmt.Errorf("create bootstrap token Secret %s/%s: %w", metav1.NamespaceSystem, s.Name, err)
	}
	return full, tokenFromSecret(created), nil
}

// ListTokens lists the bootstrap tokens in kube-system (edgesync's and
// others'), oldest first. With namespace (the server's), single-use tokens
// say which node used them, from their use records.
func ListTokens(ctx context.Context, client kubernetes.Interface, namespace string) ([]*Token, error) {
	list, err := client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		FieldSelector: "type=" + string(bootstrapapi.SecretTypeBootstrapToken),
	})
	if err != nil {
		return nil, fmt.Errorf("list bootstrap token Secrets in %s: %w", metav1.NamespaceSystem, err)
	}
	slices.SortFunc(list.Items, func(a, b corev1.Secret) int {
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	uses := map[string]corev1.ConfigMap{}
	if namespace != "" {
		records, err := client.CoreV1().ConfigMaps(namespace).List(ctx, metav1.ListOptions{LabelSelector: UseRecordLabel + "=true"})
		if err != nil {
			return nil, fmt.Errorf("list token use records in %s: %w", namespace, err)
		}
		for _, r := range records.Items {
			uses[r.Name] = r
		}
	}
	var out []*Token
	for i := range list.Items {
		if t := tokenFromSecret(&list.Items[i]); t != nil {
			if r, ok := uses[UseRecordName(t.ID)]; ok && t.UsedBy == "" {
				t.UsedBy, t.UsedAt = r.Data["node"], r.Data["usedAt"]
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// DeleteToken deletes the token with id (the public half, or the whole
// token).
func DeleteToken(ctx context.Context, client kubernetes.Interface, id string) error {
	id, _, _ = strings.Cut(id, ".")
	if !bootstraputil.IsValidBootstrapTokenID(id) {
		return fmt.Errorf("%q is not a bootstrap token ID ([a-z0-9]{6}, the part before the dot)", id)
	}
	name := bootstraputil.BootstrapTokenSecretName(id)
	if err := client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete bootstrap token Secret %s/%s: %w", metav1.NamespaceSystem, name, err)
	}
	return nil
}

// tokenFromSecret reads a bootstrap token Secret; nil when it is not one.
func tokenFromSecret(s *corev1.Secret) *Token {
	id, ok := bootstrapsecrets.ParseName(s.Name)
	if !ok || s.Type != bootstrapapi.SecretTypeBootstrapToken || bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenIDKey) != id {
		return nil
	}
	get := func(key string) string { return bootstrapsecrets.GetData(s, key) }
	t := &Token{
		ID:          id,
		Node:        get(NodeNameKey),
		SingleUse:   get(SingleUseKey) == "true",
		UsedBy:      get(UsedByKey),
		UsedAt:      get(UsedAtKey),
		Description: get(bootstrapapi.BootstrapTokenDescriptionKey),
	}
	t.NodeGeneration = -1
	if g, err := strconv.ParseInt(get(NodeGenerationKey), 10, 64); err == nil && g >= 0 {
		t.NodeGeneration = g
	}
	if exp := get(bootstrapapi.BootstrapTokenExpirationKey); exp != "" {
		// Unparsable expirations count as expired, as Kubernetes does.
		t.Expires, _ = time.Parse(time.RFC3339, exp)
		if t.Expires.IsZero() {
			t.Expires = time.Unix(0, 0)
		}
	}
	for key, v := range s.Data {
		if usage, ok := strings.CutPrefix(key, bootstrapapi.BootstrapTokenUsagePrefix); ok && string(v) == "true" {
			t.Usages = append(t.Usages, usage)
		}
	}
	slices.Sort(t.Usages)
	if groups := get(bootstrapapi.BootstrapTokenExtraGroupsKey); groups != "" {
		t.Groups = strings.Split(groups, ",")
	}
	return t
}

// secretMatches compares the secret half in constant time.
func secretMatches(s *corev1.Secret, secret string) bool {
	want := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenSecretKey)
	return subtle.ConstantTimeCompare([]byte(want), []byte(secret)) == 1
}
