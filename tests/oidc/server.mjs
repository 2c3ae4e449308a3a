// A real OAuth 2.0 authorization server for credgate's tests: panva's
// oidc-provider, configured with PKCE, refresh-token rotation and its built-in
// development login/consent pages. Listens on 127.0.0.1 on a free port and prints
// {"issuer": ...} once ready. Configuration comes from the environment:
//   CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, ACCESS_TOKEN_TTL (seconds).
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [process.env.REDIRECT_URI],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    scopes: ['openid', 'offline_access', 'api'],
    rotateRefreshToken: true,
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: { AccessToken: Number(process.env.ACCESS_TOKEN_TTL || 60) },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});
