// A real OpenID provider (the `oidc-provider` package) for broker-proxy's sign-in tests.
//
// Listens on 127.0.0.1 on a free port and prints {"port": N} on stdout; then reads one JSON
// line on stdin: {"redirect_uri": ..., "client_secret": ...} (the proxy's admin port is known
// only once the proxy runs, and the provider's port must be in the proxy's policy first).
// Accounts are the test's people: log in with the account name, any password.
import http from 'node:http';
import readline from 'node:readline';
import Provider from 'oidc-provider';

const ACCOUNTS = {
  vera: { email: 'vera@example.com', groups: ['staff'] },
  alice: { email: 'alice@example.com', groups: ['staff', 'refund-approvers'] },
  adam: { email: 'adam@example.com', groups: ['broker-admins'] },
  nobody: { email: 'nobody@example.com', groups: ['contractors'] },
  eve: { email: 'eve@elsewhere.test', groups: ['broker-admins'] },
};

let handler = (req, res) => { res.statusCode = 503; res.end('not configured yet'); };
const server = http.createServer((req, res) => handler(req, res));
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

const lines = readline.createInterface({ input: process.stdin });
lines.once('line', (line) => {
  const { redirect_uri: redirectUri, client_secret: clientSecret } = JSON.parse(line);
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'broker-console',
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['groups'] },
    // The claims go in the ID token itself, as most enterprise providers are set up to do.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    cookies: { keys: ['test-only-cookie-key-0123456789'] },
    async findAccount(ctx, id) {
      const account = ACCOUNTS[id];
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: account.email, email_verified: true, groups: account.groups };
        },
      };
    },
    // No consent screen: the test client is first-party (the oidc-provider recipe).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile');
      grant.addOIDCClaims(['email', 'email_verified', 'groups']);
      await grant.save();
      return grant;
    },
  });
  handler = provider.callback();
  process.stdout.write(JSON.stringify({ ready: true, issuer }) + '\n');
});
lines.on('close', () => process.exit(0));
