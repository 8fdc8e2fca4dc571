package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// A node's event budget holds across its reconnects: reconnecting does not
// refill it.
func TestEventBudgetSurvivesReconnects(t *testing.T) {
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge-budget")
	_, env := startWithServer(t, controllers.Config{DisableDevices: true, NodeEventRate: 0.01, NodeEventBurst: 5})
	sent := 0
	report := func(e *edge) codes.Code {
		sent++
		return codes.Code(e.report(eventAbout(edgesyncv1.Kind_KIND_NODE, "", node, "", "Budget", fmt.Sprintf("event %d", sent))).GetCode())
	}
	e := connect(t, env, node)
	e.waitSynced()
	for range 5 {
		if code := report(e); code != codes.OK {
			t.Fatalf("event within the budget answered %v", code)
		}
	}
	for i := range 3 {
		e.close()
		e = connect(t, env, node)
		e.waitSynced()
		if code := report(e); code != codes.ResourceExhausted {
			t.Fatalf("after reconnect %d, an event beyond the budget answered %v, want ResourceExhausted", i+1, code)
		}
	}
}

// An event the API server refuses for good (here a ValidatingAdmissionPolicy)
// is answered with the refusal's code, not retried for ever; once the policy
// is gone the next occurrence is written.
func TestRefusedEventIsAnsweredAndWrittenLater(t *testing.T) {
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge-refused")
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node)
	e.waitSynced()

	name := testcluster.UniqueName("no-blocked-events")
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{"", "events.k8s.io"}, APIVersions: []string{"*"}, Resources: []string{"events"}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "object.reason != 'Blocked'", Message: "Blocked events are not allowed here"}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	vap := client.AdmissionregistrationV1()
	if _, err := vap.ValidatingAdmissionPolicies().Create(t.Context(), policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = vap.ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if _, err := vap.ValidatingAdmissionPolicyBindings().Create(t.Context(), binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = vap.ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})

	blocked := func() *edgesyncv1.StatusResult {
		return e.report(eventAbout(edgesyncv1.Kind_KIND_NODE, "", node, "", "Blocked", "refused while the policy stands"))
	}
	var refused *edgesyncv1.StatusResult
	eventually(t, "the policy to refuse the node's event", func() (bool, error) {
		refused = blocked()
		return codes.Code(refused.GetCode()) != codes.OK, nil
	})
	// A policy's denial comes as 422 Invalid (INVALID_ARGUMENT) or 403
	// Forbidden (PERMISSION_DENIED), depending on the apiserver's version.
	if c := codes.Code(refused.GetCode()); (c != codes.InvalidArgument && c != codes.PermissionDenied) || !strings.Contains(refused.GetMessage(), "Blocked events are not allowed here") ||
		!strings.Contains(refused.GetMessage(), "will not be retried") {
		t.Fatalf("refused event answered %v %q; want the refusal's code with the policy's message", codes.Code(refused.GetCode()), refused.GetMessage())
	}

	if err := vap.ValidatingAdmissionPolicyBindings().Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the event to be written once the policy is gone", func() (bool, error) {
		return codes.Code(blocked().GetCode()) == codes.OK, nil
	})
}
