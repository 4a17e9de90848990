/*
 * camfleet_acl: the fleet's access rules inside Mosquitto 2.0 (plugin API v5).
 *
 * Built by `make setup` (fleet_server/broker/plugin.py) into build/broker/camfleet_acl.so;
 * fleet_server/broker/conf.py loads it, first, with its options generated from the protocol
 * contract (firmware/contract.py). It replaces the %u ACL file, which Mosquitto 2.0 consults
 * before any plugin and which grants every SUBSCRIBE. See docs/protocol.md.
 *
 * A connection's user name is its certificate's CN (use_identity_as_username). Users are:
 *   - a server identity: the CN `server_identity` or one starting with `server_prefix`;
 *     the plugin leaves it to the next plugin (dynamic security: allowed by default);
 *   - a device: a valid device id ([a-z0-9-], 3..64, not starting/ending with '-');
 *   - anything else: refused everything.
 * A device
 *   - must connect with its CN as its client id (MOSQ_EVT_BASIC_AUTH: else "not
 *     authorised", before the broker looks for a session to take over);
 *   - publishes only <root>/<id>/<up kind>, receives only <root>/<id>/<down kind> and, for a
 *     paired node, <root>/<box>/heartbeat (pairs file, re-read on SIGHUP);
 *   - subscribes only to filters under <root>/<id>/ (or its pair's heartbeat): anything
 *     else ($share/..., $SYS/..., '#', another device) gets a SUBACK failure code.
 * Allowed checks answer MOSQ_ERR_PLUGIN_DEFER when `then_dynsec` is true, so the dynamic-
 * security plugin after this one still applies its deny role (revocation); else SUCCESS.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_KINDS 32
#define MAX_TOPIC 256
#define ID_MIN 3
#define ID_MAX 64

struct pair {
	char node[ID_MAX + 1];
	char box[ID_MAX + 1];
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static char root[MAX_TOPIC] = "camfleet/v1";
static char server_identity[ID_MAX + 1] = "_fleet-server";
static char server_prefix[ID_MAX + 1] = ""; /* none unless configured */
static char *up_kinds[MAX_KINDS];
static int up_count = 0;
static char *down_kinds[MAX_KINDS];
static int down_count = 0;
static char pairs_file[1024] = "";
static struct pair *pairs = NULL;
static int pair_count = 0;
static int then_dynsec = 0;
static unsigned long refused_subscribe = 0, refused_id = 0;

static int valid_device_id(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if(n < ID_MIN || n > ID_MAX || id[0] == '-' || id[n - 1] == '-') return 0;
	for(size_t i = 0; i < n; i++){
		char c = id[i];
		if(!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return 0;
	}
	return 1;
}

static int is_server(const char *user)
{
	if(!user) return 0;
	if(!strcmp(user, server_identity)) return 1;
	return server_prefix[0] && !strncmp(user, server_prefix, strlen(server_prefix));
}

static void free_words(char **words, int *count)
{
	for(int i = 0; i < *count; i++) free(words[i]);
	*count = 0;
}

static void split_words(const char *value, char **words, int *count)
{
	free_words(words, count);
	char *copy = strdup(value), *save = NULL;
	for(char *w = strtok_r(copy, " ,", &save); w && *count < MAX_KINDS; w = strtok_r(NULL, " ,", &save)){
		words[(*count)++] = strdup(w);
	}
	free(copy);
}

static void load_pairs(void)
{
	free(pairs);
	pairs = NULL;
	pair_count = 0;
	if(!pairs_file[0]) return;
	FILE *f = fopen(pairs_file, "r");
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "camfleet_acl: no pairs file %s", pairs_file);
		return;
	}
	char line[256], node[128], box[128];
	int cap = 0;
	while(fgets(line, sizeof(line), f)){
		if(sscanf(line, "%127s %127s", node, box) != 2 || node[0] == '#') continue;
		if(!valid_device_id(node) || !valid_device_id(box)) continue;
		if(pair_count == cap){
			cap = cap ? cap * 2 : 64;
			struct pair *grown = realloc(pairs, (size_t)cap * sizeof(*pairs));
			if(!grown) break;
			pairs = grown;
		}
		memcpy(pairs[pair_count].node, node, strlen(node) + 1); /* valid ids: <= ID_MAX */
		memcpy(pairs[pair_count].box, box, strlen(box) + 1);
		pair_count++;
	}
	fclose(f);
	mosquitto_log_printf(MOSQ_LOG_INFO, "camfleet_acl: %d node/box pairs", pair_count);
}

static void apply_options(struct mosquitto_opt *opts, int count)
{
	for(int i = 0; i < count; i++){
		const char *k = opts[i].key, *v = opts[i].value;
		if(!k || !v) continue;
		if(!strcmp(k, "root")) snprintf(root, sizeof(root), "%s", v);
		else if(!strcmp(k, "server_identity")) snprintf(server_identity, sizeof(server_identity), "%s", v);
		else if(!strcmp(k, "server_prefix")) snprintf(server_prefix, sizeof(server_prefix), "%s", v);
		else if(!strcmp(k, "up_kinds")) split_words(v, up_kinds, &up_count);
		else if(!strcmp(k, "down_kinds")) split_words(v, down_kinds, &down_count);
		else if(!strcmp(k, "pairs_file")) snprintf(pairs_file, sizeof(pairs_file), "%s", v);
		else if(!strcmp(k, "then_dynsec")) then_dynsec = !strcmp(v, "true");
	}
	load_pairs();
}

/* "<root>/<id>/" prefix length of topic when it starts with it, else 0 */
static size_t own_prefix(const char *topic, const char *id)
{
	size_t r = strlen(root), n = strlen(id);
	if(strncmp(topic, root, r) || topic[r] != '/') return 0;
	if(strncmp(topic + r + 1, id, n) || topic[r + 1 + n] != '/') return 0;
	return r + 1 + n + 1;
}

static int is_kind(const char *topic, const char *id, char **kinds, int count)
{
	size_t p = own_prefix(topic, id);
	if(!p) return 0;
	for(int i = 0; i < count; i++){
		if(!strcmp(topic + p, kinds[i])) return 1;
	}
	return 0;
}

static int is_pair_heartbeat(const char *topic, const char *node)
{
	for(int i = 0; i < pair_count; i++){
		if(strcmp(pairs[i].node, node)) continue;
		size_t p = own_prefix(topic, pairs[i].box);
		if(p && !strcmp(topic + p, "heartbeat")) return 1;
	}
	return 0;
}

static int allowed(void)
{
	return then_dynsec ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_SUCCESS;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	const char *id = mosquitto_client_id(ed->client);
	if(is_server(user)) return allowed();
	if(valid_device_id(user) && id && !strcmp(user, id)) return allowed();
	refused_id++;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
		"camfleet_acl: refused client id '%s' for certificate '%s' (%lu refused)",
		id ? id : "", user ? user : "", refused_id);
	return MOSQ_ERR_AUTH;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	const char *id = mosquitto_client_id(ed->client);
	if(is_server(user)) return allowed();
	if(!valid_device_id(user) || !id || strcmp(user, id) || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	switch(ed->access){
		case MOSQ_ACL_WRITE:
			return is_kind(ed->topic, user, up_kinds, up_count) ? allowed() : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
			if(is_kind(ed->topic, user, down_kinds, down_count)) return allowed();
			return is_pair_heartbeat(ed->topic, user) ? allowed() : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			if(own_prefix(ed->topic, user) || is_pair_heartbeat(ed->topic, user)) return allowed();
			refused_subscribe++;
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"camfleet_acl: refused SUBSCRIBE '%s' of %s (%lu refused)",
				ed->topic, user, refused_subscribe);
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return allowed();
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_reload *ed = event_data;
	apply_options(ed->options, ed->option_count);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
		struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	plugin_id = identifier;
	apply_options(opts, opt_count);
	if(up_count == 0 || down_count == 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "camfleet_acl: plugin_opt_up_kinds and plugin_opt_down_kinds are required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	mosquitto_log_printf(MOSQ_LOG_INFO, "camfleet_acl: root %s, %d up and %d down kinds, then_dynsec %d",
		root, up_count, down_count, then_dynsec);
	return rc;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	free_words(up_kinds, &up_count);
	free_words(down_kinds, &down_count);
	free(pairs);
	pairs = NULL;
	pair_count = 0;
	return MOSQ_ERR_SUCCESS;
}
